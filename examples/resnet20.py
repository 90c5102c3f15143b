"""ResNet-20 for CIFAR, the residual CNN of the comparison runner's R20 workload (benchmarks/):
a ``build_model(keras)`` that kcompiler's keras and real Keras both build, layer for layer.

He et al. 2016, section 4.2: a 3x3 convolution, then three stages of three basic blocks (two
3x3 convolutions each) with 16, 32 and 64 filters, the first block of the second and third stage
striding by 2 with a 1x1 convolution as its shortcut (the "projection" shortcut, option B); every
convolution without bias and followed by BatchNormalization; global average pooling and
Dense(10). 21 Conv2D layers, 21 BatchNormalization layers, 9 residual additions.
"""


def build_model(keras):
    layers = keras.layers

    def conv_bn(x, filters, kernel=3, strides=1, relu=True):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(conv_bn(x, filters, strides=strides), filters, relu=False)
            shortcut = conv_bn(x, filters, kernel=1, strides=strides, relu=False) if strides != 1 else x
            x = layers.Activation("relu")(layers.Add()([y, shortcut]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
