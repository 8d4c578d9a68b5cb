"""mesos-ensemble executor: loads joblib or skops models in a Mesos sandbox and predicts."""
