import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import test from 'node:test';

import { mask, parse, sha256Hex } from './mask.js';

const sha256 = (text) => createHash('sha256').update(text, 'utf8').digest('hex');

test('defaults and settings', () => {
  assert.deepEqual(parse([]), { column: 'email', mode: 'stars' });
  assert.deepEqual(parse([['column', 'contact'], ['mode', 'hash']]), { column: 'contact', mode: 'hash' });
});

test('refuses unknown keys and modes', () => {
  assert.throws(() => parse([['colum', 'email']]), /unknown setting 'colum'/);
  assert.throws(() => parse([['mode', 'x']]), /mode 'x' is not stars or hash/);
  assert.throws(() => parse([['column', '']]), /column is empty/);
});

test('stars keep the first letter and the domain', () => {
  assert.equal(mask('alice@example.com', 'stars'), 'a***@example.com');
  assert.equal(mask('é.lise@exemple.fr', 'stars'), 'é***@exemple.fr');
  assert.equal(mask('a@example.com', 'stars'), '***@example.com');
  assert.equal(mask('"a@b"@example.com', 'stars'), '"***@example.com');
  assert.equal(mask('a***@example.com', 'stars'), 'a***@example.com');
});

test('text that is not an address is masked whole', () => {
  for (const text of ['alice', 'alice@', '@example.com']) assert.equal(mask(text, 'stars'), '***', text);
  assert.equal(mask('', 'stars'), '');
});

test('hash keeps the domain', () => {
  assert.equal(mask('alice@example.com', 'hash'), `${sha256('alice@example.com').slice(0, 12)}@example.com`);
  assert.equal(mask('alice', 'hash'), sha256('alice').slice(0, 12));
});

test('sha256 matches node for every padding length', () => {
  for (let n = 0; n < 200; n++) {
    const text = 'é'.repeat(n % 7) + 'x'.repeat(n);
    assert.equal(sha256Hex(text), sha256(text), `length ${n}`);
  }
});
