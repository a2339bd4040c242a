"""Many runs: the seeds of one or more models trained, evaluated, reported, summarised and compared (`fmnist
reproduce`, seeds.py), and sweeps over a model's recipe on Ray Tune (`fmnist sweep`, sweeps.py)."""
