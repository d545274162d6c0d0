"""Regenerate every golden fixture under tests/goldens/ from the published reference.

    pip install -e '.[reference,test]' && python -m tests.make_goldens            # all fixtures
    python -m tests.make_goldens text audio                                      # some of them

Each ``tests/reference/goldens_<topic>.py`` has ``make()``, which builds tiny random reference models with
fixed seeds and writes its fixtures with ``tests.golden_io.save_golden``. Running this twice yields
identical files (fixed seeds, sorted names, single-threaded torch).
"""
import importlib
import pkgutil
import sys
import time

import tests.reference as reference_pkg


def main(argv):
    import torch
    torch.set_num_threads(1)  # identical results run to run, whatever the machine
    topics = sorted(m.name[len("goldens_"):] for m in pkgutil.iter_modules(reference_pkg.__path__)
                    if m.name.startswith("goldens_"))
    chosen = argv or topics
    unknown = sorted(set(chosen) - set(topics))
    if unknown:
        sys.exit(f"unknown topic(s) {unknown}; known: {topics}")
    for topic in chosen:
        t0 = time.time()
        print(f"[make_goldens] {topic} ...", flush=True)
        importlib.import_module(f"tests.reference.goldens_{topic}").make()
        print(f"[make_goldens] {topic} done in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
