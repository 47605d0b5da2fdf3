"""The recipe as a resumable DAG of steps, run in-process or as chained Ray Jobs."""
