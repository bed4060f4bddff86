"""The benchmark (``make bench``, ``python -m bench``), one concern per module:

cli       arguments, and the order the sections run in
timing    in-process figures: the forward paths (one worker process each), FLOPs, matmul peaks,
          encodings, the machine
servers   figures through real servers: TorchServe latency and throughput, TorchServe vs KServe
report    the figures as data (tables, targets) and that data as Markdown and JSON
plot      the forward section as a PNG
load      a bounded load test against a running server (``python -m bench.load``)
"""
