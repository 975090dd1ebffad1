// Server-sent events read from a fetch() body. EventSource cannot POST or send a CSRF header, and the
// execute endpoint is a POST, so the console reads the stream itself (the WHATWG "event stream" rules:
// lines end in CR, LF or CRLF; a blank line dispatches; ":" starts a comment; data lines join with "\n").

/**
 * Parse an event stream, calling onEvent({id, event, data}) for each event (data is the raw text).
 * Resolves when the body ends; rejects if reading fails (the connection dropped, or the signal aborted).
 * @param {ReadableStream<Uint8Array>} body
 * @param {(event: {id: string|null, event: string, data: string}) => void} onEvent
 */
export async function readEventStream(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new EventStreamParser(onEvent);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  } finally {
    reader.releaseLock();
  }
}

export class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.lastId = null;
    this.reset();
  }

  reset() {
    this.eventName = "";
    this.data = [];
    this.sawData = false;
  }

  /** Feed decoded text; complete lines are processed, the rest waits for the next chunk. */
  push(text) {
    this.buffer += text;
    // A CR at the very end may be the first half of a CRLF split across chunks: keep it for later, or the
    // LF would read as a second, blank line and dispatch an event too early.
    const keepCR = this.buffer.endsWith("\r");
    const usable = keepCR ? this.buffer.slice(0, -1) : this.buffer;
    const lines = usable.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + (keepCR ? "\r" : "");
    for (const line of lines) this.line(line);
  }

  /** The body ended: an event without its closing blank line is incomplete and is dropped (per spec). */
  end() {
    this.buffer = "";
    this.reset();
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // comment, e.g. the server's ": ping" keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") {
      this.data.push(value);
      this.sawData = true;
    } else if (field === "event") {
      this.eventName = value;
    } else if (field === "id" && !value.includes("\0")) {
      this.lastId = value;
    }
    // "retry" and unknown fields are ignored: the console does not reconnect a POST.
  }

  dispatch() {
    if (this.sawData) {
      this.onEvent({ id: this.lastId, event: this.eventName || "message", data: this.data.join("\n") });
    }
    this.reset();
  }
}
