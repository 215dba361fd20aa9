"""The actors, one module per actor, and the machinery pykka lacks: the Scheduler and
per-actor Timers (`scheduler`), pooled actors (`dispatcher`) and supervision."""
