"""A 1-D convnet text classifier: Embedding, two Conv1D, GlobalMaxPooling1D, Dense.

``build_model(keras)`` takes the Keras module to build with (kcompiler.keras or real Keras,
as examples/transformer_classifier.py). ``python examples/conv1d_text_classifier.py`` trains
it on synthetic data."""


def build_model(keras, length=16, vocabulary=50, width=16, filters=16, classes=2):
    layers = keras.layers
    tokens = keras.Input((length,), dtype="int32")
    x = layers.Embedding(vocabulary, width)(tokens)
    x = layers.Conv1D(filters, 3, activation="relu")(x)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(filters, 3, padding="same", activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    return keras.Model(tokens, layers.Dense(classes, activation="softmax")(x))


if __name__ == "__main__":
    import numpy as np

    from kcompiler import keras as kc_keras
    model = build_model(kc_keras)
    model.summary()
    model.compile(optimizer=kc_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, (512, 16)).astype(np.int32)
    y = (x[:, :8].sum(axis=1) > x[:, 8:].sum(axis=1)).astype(np.int32)
    model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25)
