"""mesos-ensemble executor: loads joblib models in a Mesos sandbox and predicts."""
