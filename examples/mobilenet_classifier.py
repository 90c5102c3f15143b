"""A MobileNet-style image classifier: a strided stem convolution, a depthwise-separable block
written out (DepthwiseConv2D, BatchNormalization, ReLU6, a 1x1 Conv2D), a SeparableConv2D,
GlobalAveragePooling2D and Dense. In inference each DepthwiseConv2D + BatchNormalization +
ReLU6 is one kernel.

``build_model(keras)`` takes the Keras module to build with (kcompiler.keras or real Keras,
as examples/transformer_classifier.py). ``python examples/mobilenet_classifier.py`` trains it
on synthetic data."""

# The sizes of issue 10's benchmark (benchmarks/workloads.py MN, and the peers' workers)
BENCHMARK = {"size": 96, "width": 32, "classes": 10}


def build_model(keras, size=16, channels=3, width=8, classes=2):
    layers = keras.layers

    def bn_relu6(x):
        return layers.ReLU(6.0)(layers.BatchNormalization()(x))

    images = keras.Input((size, size, channels))
    x = bn_relu6(layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(images))
    x = bn_relu6(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
    x = bn_relu6(layers.Conv2D(2 * width, 1, use_bias=False)(x))
    x = bn_relu6(layers.SeparableConv2D(2 * width, 3, strides=2, padding="same", use_bias=False)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, layers.Dense(classes, activation="softmax")(x))


if __name__ == "__main__":
    import numpy as np

    from kcompiler import keras as kc_keras
    model = build_model(kc_keras)
    model.summary()
    model.compile(optimizer=kc_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 16, 16, 3)).astype(np.float32)
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype(np.int32)
    model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25)
