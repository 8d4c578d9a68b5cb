"""Serving: an ensemble that stays deployed (issue 15).

Long-lived replicas of each member run as Mesos tasks; the gateway (``gateway``, in the framework
process) answers ``POST /v1/predict`` by batching each member's requests (``batcher``), sending
each batch to one replica (``balancer``: least outstanding, hedging, failover; ``routing``: the
replicas the controller keeps) and integrating the members' outputs exactly as the batch job does
(``combine``); ``metrics`` measures the load the autoscaler decides from.
"""
