"""The agent's local image store: references, layer extraction, the store, `docker load`.

Import the submodules themselves (agent.images.store, …): an __init__ that imported them
all made a cycle (store → agent.images → archive → store), which breaks when two threads
import these modules at once (a request handler beside the engine's opening).
"""
