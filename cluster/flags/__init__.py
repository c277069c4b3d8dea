"""`tessera serve` and `tessera gateway` flags: TF Serving's `tensorflow_model_server` flags and
defaults (`tf_serving.py`), plus ours (`tessera.py`); the parsers are `serve.py` and `gateway.py`,
the helpers they share `parsing.py`.

    from cluster.flags.serve import parse_serve_args
    options, config = parse_serve_args(["--model_name=iris", "--model_base_path=/models/iris"])

Flags take TF's `--flag=value` form or `--flag value`; booleans accept `--flag`, `--noflag`
and `--flag=true|false|1|0`. Unknown or contradictory flags, and config files that do not parse,
end the process through argparse: a message on stderr and exit status 2.

Differences from TF Serving: `--port=0` binds any free port (TF disables TCP gRPC; we have no
UNIX socket listener), and relative local base paths are made absolute against the working
directory (TF refuses them), because replicas may run in another directory or on another node.
"""

