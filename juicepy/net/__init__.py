"""The static network and its invocation contexts."""

from .context import Context, NodeContext, Segment
from .descriptor import Descriptor, GraphBuilder, Junction, Node
from .network import Network
from .params import LearnableParams

__all__ = ["Context", "NodeContext", "Segment", "Descriptor", "GraphBuilder", "Junction", "Node",
           "Network", "LearnableParams"]
