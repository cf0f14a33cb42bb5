"""The embedded default's file-system broker, with messages written atomically.

kombu's filesystem transport creates a message's file under its final name and only then writes it: a consumer
listing the folder in between moves the empty file away, fails to decode it, and the worker stops ("Unrecoverable
error: JSONDecodeError"). Here a message is written under a name no consumer looks at and renamed into place
(os.replace, atomic within the folder), so a consumer only ever sees whole messages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: object, **kwargs: object) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # No "." before the queue's name: `_get` never picks it up.
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
