"""`pgm merge`: merge fine-tuned PaliGemmas (full models or LoRA adapters) on task vectors.

methods.py   one small function per method over tensors, and the METHODS registry
sparsify.py  exact top-k by magnitude (streamable) and DARE's random drop masks
sources.py   inputs (full model folders, PEFT adapters) read tensor by tensor; up-front checks
writer.py    sharded safetensors written as the merge goes
lowrank.py   merged LoRA deltas refactored back into a LoRA adapter (truncated SVD)
driver.py    the streaming merge: plan, check, merge tensor by tensor, write, rename into place

Nothing here imports typer or rich; heavy imports (torch, safetensors) happen inside functions
or in modules the CLI imports only when the command runs.
"""
