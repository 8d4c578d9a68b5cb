"""mesos-ensemble: the scheduler side (framework) of multi-model deployment on Mesos."""
