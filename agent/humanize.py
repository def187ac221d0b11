"""Durations worded as docker words them (go-units' HumanDuration).

Shared by the agent (the STATUS of `docker ps`: "Up 5 seconds") and the host's `vmctl`
verbs (CREATED: "3 days ago"); it imports nothing so either side can use it.
"""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    """ "Less than a second", "1 second", "5 seconds", "About a minute", "3 days" …"""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"
