"""The benchmark (``make bench``, ``python -m bench``), one concern per module:

cli         arguments, and the registry of sections (``SECTIONS``) it runs in order
section     what a section is (``Section``: key, title, measure, tables, targets) and what it measures with (``Run``)
forward     the seed's eager pipeline vs our fp32/bf16/fp16 paths      methods     layers=all, rollout, similarity, pca
families    today's models, and the same from a Hugging Face directory  encoding    the response encodings
batching    images/s in process by batch size                           compiled    torch.compile vs eager (key ``compile``)
served      TorchServe latency vs in process                            throughput  TorchServe by batchSize x workers
engines     TorchServe vs KServe's model server                         coldstart   each engine to READY, then first requests
overload    a storm, a soak, the largest request admitted               video       our video client vs DINO's loop
timing      the in-process machinery: the forward paths (one worker process per configuration), FLOPs, the machine
servers     what the served sections share: percentiles, the v2 request
tables      the report as data (tables, targets); report: that data as Markdown and JSON, after each section
plot        the forward section as a PNG
load        a bounded load test against a running server (``python -m bench.load``)
profile     a served pass operator by operator (``python -m bench.profile``)
"""
