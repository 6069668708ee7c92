"""One trainer module per method family (``sft``, ``reference``: DPO and KTO) on TRL, and what they share:
the model, adapter and arguments (``build``), the trainer around TRL's (``trainer``), callbacks."""
