"""nano-gemma3n-matformer: nano-gemma3n trained with MatFormer's nested objective (reference tier, torch).

* ``nested.py`` sub-models (FFN prefixes, skipped layers) inside a transformers Gemma3nForCausalLM
* ``train.py``  ``python -m tests.reference.nano_matformer.train --out weights/nano-gemma3n-matformer``
"""
