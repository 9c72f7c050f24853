"""Helpers shared by the test modules, one concept a module:

- project: a fresh copy of the project and its tools (make_project, tool_env, start_dvc,
  dvc_json, ROOT, SHARED_DATA)
- params: the parameter lists that make a run small (FAST_PARAMS, FACES_PARAMS, QUICK,
  INTERRUPTIBLE)
- stages: the stages chained as DVC does (run_stages_until_evaluate, run_register_stage,
  run_promote_stage, register_and_promote, run_all_stages)
- checkpoints: a training's epoch checkpoint and the wait for it
- servers: real servers as subprocesses (free_port, launch, background, stop, wait_http,
  log_tail, mlflow_server_cmd)
- images: hand-made image files for the tests of bad and unusual input

The project copy and the server processes are shared with the benchmarks, and live once in
benchmarks/_common.py (the benchmarks run as scripts and may import nothing from the tests);
project and servers re-export them. The fixtures and the environment isolation stay in the root
conftest.py."""
