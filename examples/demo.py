"""`make demo`: the seed document's MNIST CNN through kcompiler.

Builds the model, prints its summary (the tf.keras 2 table), compiles it and writes
the IR dump of every stage to out/."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kcompiler  # noqa: E402
from examples.seed_models import mnist_cnn  # noqa: E402


def main():
    model = mnist_cnn()
    model.summary()
    program = kcompiler.compile(model, batch_size=64)
    os.makedirs("out", exist_ok=True)
    for stage in program.stages:
        for fmt, ext in (("text", "txt"), ("json", "json"), ("dot", "dot")):
            with open(f"out/mnist_cnn.{stage}.{ext}", "w") as f:
                f.write(program.dump(fmt, stage))
    print(f"\nIR after the last stage ({list(program.stages)[-1]}), {program.graph.number_of_nodes()} ops:")
    print(program.dump())
    print(f"IR dumps written to out/mnist_cnn.<stage>.<txt|json|dot> for stages {', '.join(program.stages)}")


if __name__ == "__main__":
    main()
