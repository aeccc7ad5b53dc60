"""Real-time scoring service: ``POST /score`` returns a fraud probability and decision.

Features come from the online store (Redis, with PostgreSQL as its fallback) and
are computed by :mod:`fraudcore.features`, so they equal the offline rows. The
model is the ONNX artifact registered in the ``model_registry`` table.
"""
