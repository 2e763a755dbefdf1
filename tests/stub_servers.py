"""The tests' small HTTP servers, quiet when their client hangs up.

A stub FHIR or key server often writes to a client that has gone (the service cut a trickling
answer at its deadline, or refused an endless one): that is the point of the test, not an error.
socketserver prints a traceback for each such broken pipe, and one failing test once printed
6,000 lines of them; here they are dropped. Any other error is still printed.
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer

HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], HUNG_UP):
            return  # the client went away: expected of every test that cuts a server off
        super().handle_error(request, client_address)
