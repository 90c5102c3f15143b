"""The models of the seed document (tf.keras API notes), written with kcompiler.keras.

Each function returns a fresh model; `kcompiler ir examples.seed_models:mnist_cnn` dumps one."""
from kcompiler import keras
from kcompiler.keras import layers


def tiny_mlp():
    return keras.Sequential([
        layers.Dense(5, activation="relu", name="layer1", input_shape=(4,)),
        layers.Dense(3, activation="relu", name="layer2"),
        layers.Dense(1, name="layer3"),
    ])


def dense_16_4_1():
    return keras.Sequential([
        layers.Dense(16, activation="relu", input_shape=(16,)),
        layers.Dense(4, activation="relu"),
        layers.Dense(1),
    ])


def mnist_cnn():
    model = keras.Sequential()
    model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(10))
    return model


def cifar_convs():
    model = keras.Sequential()
    model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(64, (3, 3), (2, 2), activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
    return model


def embedding_simple_rnn(return_sequences=False):
    model = keras.Sequential()
    model.add(layers.Embedding(10000, 32))
    model.add(layers.SimpleRNN(32, return_sequences=return_sequences))
    return model


def embedding_simple_rnn_sequences():
    return embedding_simple_rnn(return_sequences=True)


def stacked_simple_rnn():
    model = keras.Sequential()
    model.add(layers.Embedding(10000, 32))
    model.add(layers.SimpleRNN(32, return_sequences=True))
    model.add(layers.SimpleRNN(32, return_sequences=True))
    model.add(layers.SimpleRNN(32, return_sequences=True))
    model.add(layers.SimpleRNN(32))
    return model


def embedding_lstm():
    model = keras.Sequential()
    model.add(layers.Embedding(10000, 16))
    model.add(layers.LSTM(64))
    model.add(layers.Dense(16, activation="relu"))
    model.add(layers.Dense(1, activation="sigmoid"))
    return model


ALL = [tiny_mlp, dense_16_4_1, mnist_cnn, cifar_convs, embedding_simple_rnn, embedding_simple_rnn_sequences,
       stacked_simple_rnn, embedding_lstm]
