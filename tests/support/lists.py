"""One client for every gRPC service the lists process serves, for tests that call across them."""

from __future__ import annotations

import importlib

import grpc

# The lists process's services, by the module that defines each (lists.proto and its sub-domains).
LISTS_PROTOS = ("lists", "lists_fields", "lists_imports", "lists_segments", "lists_suppression", "lists_signup",
                "lists_privacy")  # fmt: skip


class ListsStubs:
    """Each RPC of ListsService and of the audience's sub-domain services as an attribute of its name.

    The method names are unique across those services, so `ListsStubs(channel).CreateField(...)` is
    ListsFieldsService's; `.services` names the stubs for a test that wants one.
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.services: dict[str, object] = {}
        for name in LISTS_PROTOS:
            messages = importlib.import_module(f"mailblast.v1.{name}_pb2")
            services = importlib.import_module(f"mailblast.v1.{name}_pb2_grpc")
            for service in messages.DESCRIPTOR.services_by_name.values():
                stub = getattr(services, f"{service.name}Stub")(channel)
                self.services[service.name] = stub
                for method in service.methods:
                    assert not hasattr(self, method.name), f"{method.name} is served twice"
                    setattr(self, method.name, getattr(stub, method.name))
