"""A Transformer-encoder text classifier: token and position embeddings, two blocks of
MultiHeadAttention + LayerNormalization + feed-forward (residual), GlobalAveragePooling1D, Dense.

``build_model(keras)`` takes the Keras module to build with: ``kcompiler.keras``, or real Keras
(tests/fixtures/make_attention_fixtures.py builds Keras's side of the trajectory fixture with
this same function). ``python examples/transformer_classifier.py`` trains it on synthetic data.
"""

# The sizes of issue 10's benchmark (benchmarks/workloads.py TX, and the peers' workers)
BENCHMARK = {"length": 128, "vocabulary": 10000, "width": 128, "heads": 2, "key_dim": 64, "hidden": 256}


def build_model(keras, length=16, vocabulary=50, width=16, heads=2, key_dim=8, hidden=32, blocks=2, classes=2):
    class PositionEmbedding(keras.layers.Layer):
        """Adds a learned (length, width) position embedding to its input."""

        def build(self, input_shape):
            self.positions = self.add_weight(shape=(input_shape[1], input_shape[2]), name="positions",
                                             initializer="glorot_uniform")

        def call(self, inputs):
            return keras.ops.add(inputs, self.positions)

    layers = keras.layers
    tokens = keras.Input((length,), dtype="int32")
    x = PositionEmbedding()(layers.Embedding(vocabulary, width)(tokens))
    for _ in range(blocks):
        attended = layers.MultiHeadAttention(heads, key_dim)(x, x)
        x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, attended]))
        fed = layers.Dense(width)(layers.Dense(hidden, activation="relu")(x))
        x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, fed]))
    x = layers.GlobalAveragePooling1D()(x)
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
