"""Receive: instances arrive and are handed to the spool, answered only once durable.

The DIMSE storage SCP (:class:`StorageSCP`: C-ECHO, C-STORE, peer allow-list, TLS) runs on its
own association loop (:mod:`.association`) and PDU encoders (:mod:`.pdu`); the STOW-RS receiver
(:class:`StowReceiver`) parses multipart bodies (:mod:`.multipart`). Both store through
:class:`neuroread.node.spool.Spool` and answer with the status it implies.
"""
from .dimse import PREAMBLE, TRANSFER_SYNTAXES, Peer, StorageSCP, StoreStatus
from .multipart import MultipartError, split_multipart
from .stow import StowReceiver

__all__ = [
    "MultipartError",
    "PREAMBLE",
    "Peer",
    "StorageSCP",
    "StoreStatus",
    "StowReceiver",
    "TRANSFER_SYNTAXES",
    "split_multipart",
]
