"""Training, kept apart from the model classes: ``qrm`` (``distrm train``: data -> features ->
heads -> debias -> gate), ``gate`` (step 2), ``bt_ensemble`` (``model: ensemble``),
``finetune`` (``distrm finetune-backbone``). Loading a model never imports this package."""
