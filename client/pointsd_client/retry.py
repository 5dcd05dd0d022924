"""Which failures are retried, and how patiently (docs/client.md, "Retries")."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RETRYABLE_CODES", "RetryPolicy"]

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

_RNG = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call safe to repeat is attempted.

    `max_attempts` counts the first one. Before retry n (1, 2, ...) the client
    sleeps a random time between 0 and min(max_backoff_s, initial_backoff_s *
    multiplier ** (n - 1)): "full jitter", so clients that failed together
    do not come back together.

    `budget_s` bounds a call's attempts together: no retry starts once that
    long has passed since the first attempt, so that a slow service is not
    sent up to `max_attempts` deadlines' worth of the same work (None: no
    bound). RESOURCE_EXHAUSTED (the service refusing work: its outbox is
    full) waits at least `overload_backoff_s` before a retry."""

    max_attempts: int = 4
    budget_s: float | None = 5.0
    overload_backoff_s: float = 0.5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    codes: frozenset[grpc.StatusCode] = RETRYABLE_CODES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0 or None, got {self.budget_s}")

    def retries(self, code: grpc.StatusCode, attempt: int, elapsed_s: float = 0.0) -> bool:
        """Whether attempt `attempt` (1-based), failed with `code` after
        `elapsed_s` seconds since the first attempt, is followed by another."""
        within = self.budget_s is None or elapsed_s < self.budget_s
        return code in self.codes and attempt < self.max_attempts and within

    def backoff_s(
        self,
        attempt: int,
        rng: random.Random | None = None,
        code: grpc.StatusCode | None = None,
    ) -> float:
        """The sleep after failed attempt `attempt` (1-based) with `code`."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        pause = (rng or _RNG).uniform(0.0, ceiling)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            pause = max(pause, self.overload_backoff_s)
        return pause


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
