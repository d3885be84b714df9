"""The agent: runs one job on its node (probe, load, compress, export, build, measure, evaluate).

Plain Python with no Ray imports: `agent.runner.run_job(job)` is callable without Ray."""
