"""Model compression: weight-only quantization (int8, int4, AWQ), quantization-aware training, pruning.

Map:

    qlinear.py   quantizers (round-to-nearest int8 per channel, int4 per group) and the modules that
                 compute with the codes: QuantLinear, QuantRoutedExperts (CPU packed kernels)
    awq.py       activation-aware scale search on calibration text (AWQ)
    quantize.py  quantize_model (module swap from outside the model), the on-disk format,
                 save_quantized / load_quantized (``seekforge.model.load_model`` calls the latter)
    data.py      calibration / evaluation text -> token windows, bits per byte
    cli.py       ``seekforge quantize`` and ``seekforge prune``
"""
