"""neuroread.node.receive.pdu packs the file meta and the C-STORE-RSP by hand: the bytes must be pydicom's and
pynetdicom's own, for every variant the receive stage sends."""
from __future__ import annotations

import pytest
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import P_DATA_TF

from neuroread.node.receive.pdu import c_store_rsp, file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"  # even length
MR = "1.2.840.10008.5.1.4.1.1.4"  # even
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # odd
INSTANCES = ("1.2.3.4", "1.2.3.45", "2.25.248409172403541778536545150098987424481")
SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90")


@pytest.mark.parametrize("sop_class", [CT, ENHANCED_MR])
@pytest.mark.parametrize("instance", INSTANCES)
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("source", ["STORESCU", "PACS", "A", "SIXTEEN_CHARS_AE"])
def test_file_meta_is_pydicoms(sop_class, instance, syntax, source):
    meta = create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(instance),
                            transfer_syntax=UID(syntax))
    meta.SourceApplicationEntityTitle = source
    assert file_meta(sop_class, instance, syntax, source) == encode_file_meta(meta)


def _pynetdicom_rsp(context_id, message_id, sop_class, instance, status, comment):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [p_data] = list(message.encode_msg(context_id, 16382))
    pdu = P_DATA_TF()
    pdu.from_primitive(p_data)
    return pdu.encode()


@pytest.mark.parametrize("sop_class", [MR, ENHANCED_MR])
@pytest.mark.parametrize("instance", INSTANCES)
@pytest.mark.parametrize("status, comment", [(0x0000, None), (0xA700, "spool full"),
                                             (0xC002, "SOPInstanceUID '../x' is not a valid DICOM UID"),
                                             (0xC000, "data set truncated")])
@pytest.mark.parametrize("context_id, message_id", [(1, 1), (255, 65535)])
def test_c_store_rsp_is_pynetdicoms(sop_class, instance, status, comment, context_id, message_id):
    ours = c_store_rsp(context_id, message_id, sop_class, instance, status, comment)
    assert ours == _pynetdicom_rsp(context_id, message_id, sop_class, instance, status, comment)
    decoded = P_DATA_TF()
    decoded.decode(ours)  # and pynetdicom reads it back as one last command fragment
    [(cx, pdv)] = decoded.to_primitive().presentation_data_value_list
    assert cx == context_id and pdv[0] == 0x03
