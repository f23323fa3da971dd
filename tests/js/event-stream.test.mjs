import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EventStreamParser } from '../../notifier/static/notifier.js';

/** Feed `chunks` to a parser; the messages it dispatched and its last event id. */
function parse(...chunks) {
  const messages = [];
  const parser = new EventStreamParser((message) => messages.push(message));
  for (const chunk of chunks) parser.push(chunk);
  return { messages, lastEventId: parser.lastEventId };
}

const STREAM =
  ': heartbeat\n\n' +
  'id: s1:0\ndata: {"type":"welcome","user":"ada"}\n\n' +
  'id: s1:1\ndata: {"type":"event","id":"a","data":"é ✓"}\n\n' +
  ': heartbeat\n\n' +
  'data: {"type":"pong","id":3}\n\n';

const EXPECTED = [
  { data: '{"type":"welcome","user":"ada"}', id: 's1:0', event: 'message' },
  { data: '{"type":"event","id":"a","data":"é ✓"}', id: 's1:1', event: 'message' },
  { data: '{"type":"pong","id":3}', id: 's1:1', event: 'message' },
];

test('a stream split at any one point gives the same messages', () => {
  for (let cut = 0; cut <= STREAM.length; cut += 1) {
    const { messages } = parse(STREAM.slice(0, cut), STREAM.slice(cut));
    assert.deepEqual(messages, EXPECTED, `cut at ${cut}`);
  }
});

test('a stream fed one character at a time gives the same messages', () => {
  assert.deepEqual(parse(...STREAM).messages, EXPECTED);
});

test('lines may end in CRLF, LF or CR, mixed', () => {
  for (const eol of ['\r\n', '\n', '\r']) {
    const text = STREAM.replaceAll('\n', eol);
    assert.deepEqual(parse(text).messages, EXPECTED, JSON.stringify(eol));
    assert.deepEqual(parse(...text).messages, EXPECTED, `${JSON.stringify(eol)}, one character at a time`);
  }
  assert.deepEqual(parse('data: a\r\ndata: b\rdata: c\n\r\n').messages, [{ data: 'a\nb\nc', id: '', event: 'message' }]);
});

test('a CRLF split between two chunks is one line end, not an empty line', () => {
  const { messages } = parse('data: a\r', '\ndata: b\r', '\n\r', '\n');
  assert.deepEqual(messages, [{ data: 'a\nb', id: '', event: 'message' }]);
  const crThenLine = parse('data: a\r', 'data: b\n\n');
  assert.deepEqual(crThenLine.messages, [{ data: 'a\nb', id: '', event: 'message' }], 'a lone CR ends the line too');
});

test('comments are skipped, and a message with no data is not dispatched', () => {
  const { messages } = parse(': heartbeat\n\n:\n\nid: s1:4\n\nevent: ping\n\n: x\ndata: y\n: z\n\n');
  assert.deepEqual(messages, [{ data: 'y', id: 's1:4', event: 'message' }]);
});

test('ids: the last one is kept across messages without one; one with NUL is ignored; an empty one clears it', () => {
  let result = parse('id: s1:7\ndata: a\n\ndata: b\n\n');
  assert.deepEqual(result.messages.map((m) => m.id), ['s1:7', 's1:7']);
  result = parse('id: s1:7\n\nid: bad\0id\ndata: a\n\n');
  assert.equal(result.lastEventId, 's1:7');
  result = parse('id: s1:7\n\nid\ndata: a\n\n');
  assert.equal(result.lastEventId, '');
});

test('fields: one leading space is dropped, a field without colon is empty, unknown fields and retry are ignored', () => {
  const { messages } = parse('data:no space\ndata:  two spaces\ndata\nretry: 10\nfoo: bar\nevent:custom\n\n');
  assert.deepEqual(messages, [{ data: 'no space\n two spaces\n', id: '', event: 'custom' }]);
});

test('an unterminated line is held until its end arrives, and a very long one is refused', () => {
  const { messages } = parse('data: {"a":', '1}');
  assert.deepEqual(messages, [], 'no blank line yet');
  const parser = new EventStreamParser(() => {});
  assert.throws(() => parser.push(`data: ${'x'.repeat(9 * 1024 * 1024)}`), RangeError);
});
