"""``scripts/bench`` (issue 6): our token mint and consume paths against naive baselines, in one run.

children    every process started, and how they end      servers   redis, baselines, our server
wrk         wrk runs and the parsing of its report         wsload    the WebSocket consume generator
agent       the SDK socket that keeps the agent online     suite     one pass over the rows per server
token_memory  Redis bytes per outstanding token            report    the printed table and ratios
"""
