"""Load balancing over a service's backends (CONTRACT 7): pure, sans-I/O; the BalancerActor
and the TCP proxy drive it."""

from caddy.balance.balancer import Backend, Balancer, BalanceSettings, Pick
from caddy.balance.outliers import EjectionSettings
from caddy.balance.strategies import STRATEGIES

__all__ = ["STRATEGIES", "Backend", "BalanceSettings", "Balancer", "EjectionSettings", "Pick"]
