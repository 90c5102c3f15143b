"""A small U-Net: two Conv2D + MaxPooling2D levels down, a Conv2DTranspose and an UpSampling2D
back up, each joined to the level's features by Concatenate, and a per-pixel softmax.

``build_model(keras)`` takes the Keras module to build with (kcompiler.keras or real Keras,
as examples/transformer_classifier.py). ``python examples/unet_segmenter.py`` trains it on
synthetic data."""


def build_model(keras, size=16, channels=3, width=8, classes=2):
    layers = keras.layers
    images = keras.Input((size, size, channels))
    level1 = layers.Conv2D(width, 3, padding="same", activation="relu")(images)
    level2 = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.MaxPooling2D(2)(level1))
    bottom = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.MaxPooling2D(2)(level2))
    up2 = layers.Conv2DTranspose(2 * width, 2, strides=2)(bottom)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(layers.Concatenate()([up2, level2]))
    up1 = layers.UpSampling2D(2)(x)
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(layers.Concatenate()([up1, level1]))
    return keras.Model(images, layers.Conv2D(classes, 1, activation="softmax")(x))


if __name__ == "__main__":
    import numpy as np

    from kcompiler import keras as kc_keras
    model = build_model(kc_keras)
    model.summary()
    model.compile(optimizer=kc_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16, 16, 3)).astype(np.float32)
    y = (x[..., 0] > 0.3).astype(np.int32)
    model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25)
