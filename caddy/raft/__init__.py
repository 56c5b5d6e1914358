"""The Raft consensus core, sans I/O: `node.RaftNode` takes ticks, messages and requests and
hands its driver `ready.Ready` batches (persist, then send, then apply), as etcd's RawNode does.
"""
