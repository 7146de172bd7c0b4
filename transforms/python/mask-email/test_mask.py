import hashlib
import unittest

import mask


class ParseTest(unittest.TestCase):
    def test_defaults(self):
        s = mask.parse([])
        self.assertEqual((s.column, s.mode), ("email", "stars"))

    def test_settings(self):
        s = mask.parse([("column", "contact"), ("mode", "hash")])
        self.assertEqual((s.column, s.mode), ("contact", "hash"))

    def test_refuses_unknown_keys_and_modes(self):
        with self.assertRaisesRegex(ValueError, "unknown setting 'colum'"):
            mask.parse([("colum", "email")])
        with self.assertRaisesRegex(ValueError, "mode 'x' is not stars or hash"):
            mask.parse([("mode", "x")])
        with self.assertRaisesRegex(ValueError, "column is empty"):
            mask.parse([("column", "")])


class MaskTest(unittest.TestCase):
    def test_stars_keep_the_first_letter_and_the_domain(self):
        self.assertEqual(mask.mask("alice@example.com", "stars"), "a***@example.com")
        self.assertEqual(mask.mask("é.lise@exemple.fr", "stars"), "é***@exemple.fr")
        self.assertEqual(mask.mask("a@example.com", "stars"), "***@example.com")
        self.assertEqual(mask.mask('"a@b"@example.com', "stars"), '"***@example.com')

    def test_masked_text_stays_as_it_is(self):
        self.assertEqual(mask.mask("a***@example.com", "stars"), "a***@example.com")

    def test_text_that_is_not_an_address_is_masked_whole(self):
        for text in ["alice", "alice@", "@example.com"]:
            self.assertEqual(mask.mask(text, "stars"), "***", text)
        self.assertEqual(mask.mask("", "stars"), "")

    def test_hash_keeps_the_domain(self):
        digest = hashlib.sha256(b"alice@example.com").hexdigest()[:12]
        self.assertEqual(mask.mask("alice@example.com", "hash"), digest + "@example.com")
        self.assertEqual(mask.mask("alice", "hash"), hashlib.sha256(b"alice").hexdigest()[:12])


if __name__ == "__main__":
    unittest.main()
