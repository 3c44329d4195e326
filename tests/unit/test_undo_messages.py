"""An undo message that is not what the process manager sends is refused before any I/O."""

from __future__ import annotations

import pytest

from tasks.compensation import refund_tickets


@pytest.mark.parametrize("ticket_ids", [[], "t1", [1, 2], None, [["t1"]]])
def test_refund_tickets_refuses_anything_but_a_list_of_ids(ticket_ids: object):
    assert refund_tickets("a-bundle", ticket_ids) == "refused"
