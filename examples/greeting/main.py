"""Reads its own configuration from envVars; sees nothing of the worker's environment."""
import os


def handler(event, context):
    return {
        "greeting": os.environ.get("GREETING", "Hello"),
        "visibleEnv": sorted(os.environ),
        "memoryLimitMb": context.memory_limit_in_mb,
    }
