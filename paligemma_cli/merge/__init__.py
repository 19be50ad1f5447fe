"""`pgm merge`: merge fine-tuned PaliGemmas (full models or LoRA adapters) on task vectors.

catalog.py   the methods' names, help, flags and defaults (no torch: `pgm merge --help`)
params.py    MergeParams (the knobs), TensorHints (per-tensor extras), MergeStats (counters)
methods.py   one small function per method over tensors, and the METHODS registry
spectral.py  TSV-M, Iso-C, Iso-CTS on whole matrices (SVDs)
gram.py      the same on matrices too large to hold, through streamed Gram matrices
sparsify.py  exact top-k by magnitude (streamable), DARE's and DELLA's random drops, Breadcrumbs' window
sources.py   inputs (full model folders, PEFT adapters) read tensor by tensor; up-front checks
request.py   MergeRequest / MergeResult and the flags' checks and warnings
tensors.py   the merge tensor by tensor (MergeJob, MergeStream, merged_state_dict): where the
             result goes is the caller's business (a writer, or memory)
writer.py    sharded safetensors written as the merge goes
lowrank.py   merged LoRA deltas refactored back into a LoRA adapter (truncated SVD)
driver.py    `pgm merge` end to end: prepare, check, stream into the writer, rename into place

Nothing here imports typer or rich; heavy imports (torch, safetensors) happen inside functions
or in modules the CLI imports only when the command runs.
"""
