#!/usr/bin/env python3
"""A small Kiln client using only the Python standard library (urllib, json).

    from kiln_client import Kiln
    kiln = Kiln("http://127.0.0.1:8080")
    job = kiln.submit("characters", {"theme": "lighthouse keepers", "count": 2})
    for event in kiln.follow(job["id"]):
        print(event.event, event.data)
    print(kiln.get(job["id"])["result"])

`follow` parses the Server-Sent Events stream of a job and, when the connection drops,
reconnects with `Last-Event-ID` set to the last id it saw, so every event is yielded
exactly once. It stops after the terminal event (`completed`, `failed`, `cancelled`).

Run as a program it submits a job and prints its progress:

    python3 kiln_client.py --server http://127.0.0.1:8080 characters '{"theme": "pirates", "count": 2}'
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

TERMINAL = ("completed", "failed", "cancelled")


class KilnError(Exception):
    """An error answer of the API: `{"error": {"kind", "message"}}`."""

    def __init__(self, status, kind, message):
        super().__init__(f"{kind} (HTTP {status}): {message}")
        self.status = status
        self.kind = kind
        self.message = message


class Event:
    """One Server-Sent Event: `id` (int or None), `event` (its name), `data` (parsed JSON)."""

    def __init__(self, id, event, data):
        self.id = id
        self.event = event
        self.data = data

    def __repr__(self):
        return f"Event(id={self.id!r}, event={self.event!r}, data={self.data!r})"


class Kiln:
    def __init__(self, server="http://127.0.0.1:8080", timeout=60, api_key=None):
        """`api_key`: sent as `Authorization: Bearer` (not needed in open mode);
        defaults to the KILN_API_KEY environment variable."""
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key or os.environ.get("KILN_API_KEY")

    def _auth(self, headers):
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request(self, method, path, body=None, headers=None):
        data = None
        headers = self._auth(dict(headers or {}))
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.server + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None

    def submit(self, job_type, payload=None, idempotency_key=None, **options):
        """POST /v1/jobs. `options`: priority, max_attempts, timeout_s, run_at."""
        body = {"type": job_type, "payload": payload or {}}
        body.update({k: v for k, v in options.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/v1/jobs", body, headers)

    def get(self, job_id):
        """GET /v1/jobs/{id}."""
        return self._request("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id):
        return self._request("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id):
        return self._request("POST", f"/v1/jobs/{job_id}/retry")

    def follow(self, job_id, last_event_id=None, max_reconnects=20):
        """Yields the job's events in order, each exactly once, until the terminal one.

        A dropped connection is resumed with `Last-Event-ID` after a short backoff; after
        `max_reconnects` failures in a row the last error is raised. A 204 answer means the
        job is over and nothing follows `last_event_id`.
        """
        failures = 0
        while True:
            headers = self._auth({"Accept": "text/event-stream"})
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            request = urllib.request.Request(
                f"{self.server}/v1/jobs/{job_id}/events", headers=headers
            )
            try:
                # No read timeout shorter than the 15 s keep-alive.
                with urllib.request.urlopen(request, timeout=max(self.timeout, 30)) as response:
                    if response.status == 204:
                        return
                    for event in _parse_sse(response):
                        if event.id is not None:
                            if last_event_id is not None and event.id <= last_event_id:
                                continue
                            last_event_id = event.id
                        failures = 0
                        yield event
                        if event.event in TERMINAL:
                            return
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raise _api_error(error) from None
                failure = error
            except (OSError, urllib.error.URLError) as error:
                failure = error
            else:
                failure = ConnectionError("the event stream ended early")
            failures += 1
            if failures > max_reconnects:
                raise failure
            time.sleep(min(0.2 * 2 ** (failures - 1), 2.0))


def _api_error(error):
    try:
        detail = json.loads(error.read())["error"]
        return KilnError(error.code, detail.get("kind"), detail.get("message"))
    except (ValueError, KeyError, TypeError):
        return KilnError(error.code, f"http_{error.code}", str(error))


def _parse_sse(response):
    """Yields the events of an SSE response (a file of bytes lines)."""
    id_, name, data = None, None, []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if name is not None:
                text = "\n".join(data)
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = text
                yield Event(id_, name, parsed)
            id_, name, data = None, None, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                id_ = int(value) if value.isdigit() else None
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)


def main():
    parser = argparse.ArgumentParser(description="Submit a Kiln job and follow it.")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("type", nargs="?", default="characters")
    parser.add_argument("payload", nargs="?", default='{"theme": "lighthouse keepers", "count": 2}')
    args = parser.parse_args()

    kiln = Kiln(args.server)
    try:
        job = kiln.submit(args.type, json.loads(args.payload))
    except KilnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"submitted {job['id']}", flush=True)
    for event in kiln.follow(job["id"]):
        if event.event == "progress":
            print(f"progress {event.data['progress']:3d}% {event.data['message']}", flush=True)
        elif event.event == "partial":
            print(f"partial {event.data['name']}", flush=True)
        elif event.event == "status":
            print(f"status {event.data['status']} (attempt {event.data['attempt']})", flush=True)
    job = kiln.get(job["id"])
    if job["status"] == "completed":
        print("result " + json.dumps(job["result"]))
        return 0
    print(f"{job['status']}: {job.get('error')}", file=sys.stderr)
    return 1 if job["status"] == "failed" else 2


if __name__ == "__main__":
    sys.exit(main())
