"""The one spelling of each retraining task name: tasks.py registers under these, beat rows and
the outbox send to them. A module of its own so every part of retraining can import it without
importing the others (or the ML stack)."""

from __future__ import annotations

RUN_TASK = "recotem.retraining.tasks.run_retraining"
REAP_TASK = "recotem.retraining.tasks.reap_runs"
WEBHOOK_TASK = "recotem.retraining.tasks.deliver_webhook"
CANARY_TASK = "recotem.retraining.tasks.decide_canaries"
