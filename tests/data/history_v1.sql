-- A history database as vlassist wrote it at schema version 1 (001_initial only): the DDL exactly as
-- `git show 342dd2e:vlassist/store/history.py` created it, and rows the way that code stored them
-- (options and stats as JSON text, the model family inside the stats, no model-input sizes on images).
CREATE TABLE IF NOT EXISTS migrations (name VARCHAR(100) PRIMARY KEY, applied_at FLOAT NOT NULL);
CREATE TABLE conversations (
            id INTEGER PRIMARY KEY, owner VARCHAR(200) NOT NULL, title VARCHAR(200) NOT NULL,
            created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL);
CREATE INDEX ix_conversations_owner ON conversations (owner, updated_at);
CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL, role VARCHAR(16) NOT NULL, text TEXT NOT NULL, status VARCHAR(16) NOT NULL,
            preset VARCHAR(32), options TEXT, stats TEXT, created_at FLOAT NOT NULL);
CREATE INDEX ix_messages_conversation_id ON messages (conversation_id, position);
CREATE TABLE images (
            sha256 VARCHAR(64) PRIMARY KEY, format VARCHAR(16) NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, nbytes INTEGER NOT NULL, data BLOB NOT NULL, thumbnail BLOB NOT NULL,
            created_at FLOAT NOT NULL);
CREATE TABLE message_images (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL REFERENCES images (sha256),
            name VARCHAR(255) NOT NULL, PRIMARY KEY (message_id, position));
CREATE INDEX ix_message_images_sha256 ON message_images (sha256);
INSERT INTO migrations (name, applied_at) VALUES ('001_initial', 1700000000.0);
PRAGMA user_version = 1;

-- Images: 40x30 red, 30x40 green, 20x10 blue PNGs (the thumbnails are the same bytes: any bytes do here).
INSERT INTO images VALUES ('34a1aa8684853ac67c2f37a0da37ce1dca1b760836351e66541bcdd99b831558', 'PNG', 40, 30, 101,
  X'89504e470d0a1a0a0000000d49484452000000280000001e0802000000d1bfcb8a0000002c4944415478daedcd3101000004003004d13f8a5822383d5b81e574c7878a2762b1582c168bc562b1582cbe2d1ddc01400343e9de0000000049454e44ae426082',
  X'89504e470d0a1a0a0000000d49484452000000280000001e0802000000d1bfcb8a0000002c4944415478daedcd3101000004003004d13f8a5822383d5b81e574c7878a2762b1582c168bc562b1582cbe2d1ddc01400343e9de0000000049454e44ae426082',
  1700000001.0);
INSERT INTO images VALUES ('a8e32168c489b8cc43d1380ce9b2089a381f1ee219ba1ad7e479e4f304ef3566', 'PNG', 30, 40, 100,
  X'89504e470d0a1a0a0000000d494844520000001e0000002808020000006671dd450000002b4944415478daedcc410d00000804a0d398f60f620a1f6e1080cae448276ab55aad56abd56ab55aadfe5e2f465d00aad5ca7f500000000049454e44ae426082',
  X'89504e470d0a1a0a0000000d494844520000001e0000002808020000006671dd450000002b4944415478daedcc410d00000804a0d398f60f620a1f6e1080cae448276ab55aad56abd56ab55aadfe5e2f465d00aad5ca7f500000000049454e44ae426082',
  1700000001.0);
INSERT INTO images VALUES ('79d3876cc31f23d3fe7758dd95dce334cb257236f39b4b4e1d19739eeee94917', 'PNG', 20, 10, 80,
  X'89504e470d0a1a0a0000000d49484452000000140000000a08020000003b37e9b1000000174944415478da63646038c1402e6062a0008c6a1e199a01f47d00dc5b3de26f0000000049454e44ae426082',
  X'89504e470d0a1a0a0000000d49484452000000140000000a08020000003b37e9b1000000174944415478da63646038c1402e6062a0008c6a1e199a01f47d00dc5b3de26f0000000049454e44ae426082',
  1700000200.0);

-- ann: a question about two images, boxes, a text-only follow-up that was stopped, a zoom whose answer failed
-- before any sizing, and a retry whose answer lists all three images.
INSERT INTO conversations VALUES (1, 'ann', 'Find the gauges', 1700000000.0, 1700000400.0);
INSERT INTO messages VALUES (1, 1, 0, 'user', 'Find the gauges', 'complete', NULL, NULL, NULL, 1700000001.0);
INSERT INTO message_images VALUES (1, 0, '34a1aa8684853ac67c2f37a0da37ce1dca1b760836351e66541bcdd99b831558', 'panel.png');
INSERT INTO message_images VALUES (1, 1, 'a8e32168c489b8cc43d1380ce9b2089a381f1ee219ba1ad7e479e4f304ef3566', 'detail.png');
INSERT INTO messages VALUES (2, 1, 1, 'assistant', '[{"bbox_2d": [1, 2, 20, 14], "label": "gauge"}]', 'complete', 'grounding',
  '{"max_new_tokens": 1024, "precise": true, "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_image_tokens": 1280, "low_res": false, "min_new_tokens": 0, "seed": null, "use_cache": true, "json_schema": null}',
  '{"prompt_tokens": 40, "visual_tokens": 4, "new_tokens": 17, "reused_tokens": 0, "queued_s": 0.0, "ttft_s": 0.25, "total_s": 1.5, "tokens_per_s": 11.3, "stop_reason": "eos", "images": [{"original_size": [40, 30], "input_size": [56, 28], "visual_tokens": 2}, {"original_size": [30, 40], "input_size": [28, 56], "visual_tokens": 2}], "error": null, "model_family": "qwen2_5_vl", "model": "models/Qwen2.5-VL-7B-Instruct"}',
  1700000002.0);
INSERT INTO messages VALUES (3, 1, 2, 'user', 'And the second one?', 'complete', NULL, NULL, NULL, 1700000100.0);
INSERT INTO messages VALUES (4, 1, 3, 'assistant', 'The second gauge reads', 'interrupted', NULL,
  '{"max_new_tokens": 128}',
  '{"prompt_tokens": 70, "visual_tokens": 4, "new_tokens": 5, "stop_reason": "stopped", "legacy_field": 1, "images": [{"original_size": [40, 30], "input_size": [84, 56], "visual_tokens": 6}, {"original_size": [30, 40], "input_size": [56, 84], "visual_tokens": 6}], "model_family": "qwen2_5_vl"}',
  1700000101.0);
INSERT INTO messages VALUES (5, 1, 4, 'user', 'Look closely at this region', 'complete', NULL, NULL, NULL, 1700000200.0);
INSERT INTO message_images VALUES (5, 0, '79d3876cc31f23d3fe7758dd95dce334cb257236f39b4b4e1d19739eeee94917', 'zoom-gauge.png');
INSERT INTO messages VALUES (6, 1, 5, 'assistant', '', 'error', NULL, '{}',
  '{"stop_reason": "error", "error": "CUDA out of memory", "images": [], "model_family": "qwen2_5_vl"}', 1700000201.0);
INSERT INTO messages VALUES (7, 1, 6, 'user', 'Try again', 'complete', NULL, NULL, NULL, 1700000300.0);
INSERT INTO messages VALUES (8, 1, 7, 'assistant', 'A blue patch.', 'complete', NULL, NULL,
  '{"prompt_tokens": 90, "visual_tokens": 5, "new_tokens": 4, "stop_reason": "eos", "images": [{"original_size": [40, 30], "input_size": [56, 28], "visual_tokens": 2}, {"original_size": [30, 40], "input_size": [28, 56], "visual_tokens": 2}, {"original_size": [20, 10], "input_size": [28, 28], "visual_tokens": 1}], "model_family": "qwen2_5_vl"}',
  1700000301.0);

-- bob: the same red image in another conversation, answered by another model at another size.
INSERT INTO conversations VALUES (2, 'bob', 'What is it?', 1700000500.0, 1700000501.0);
INSERT INTO messages VALUES (9, 2, 0, 'user', 'What is it?', 'complete', NULL, NULL, NULL, 1700000500.0);
INSERT INTO message_images VALUES (9, 0, '34a1aa8684853ac67c2f37a0da37ce1dca1b760836351e66541bcdd99b831558', 'a.png');
INSERT INTO messages VALUES (10, 2, 1, 'assistant', 'A red rectangle.', 'complete', 'describe', NULL,
  '{"prompt_tokens": 30, "visual_tokens": 1, "new_tokens": 4, "stop_reason": "eos", "images": [{"original_size": [40, 30], "input_size": [32, 32], "visual_tokens": 1}], "model_family": "qwen3_vl", "model": "models/Qwen3-VL-8B-Instruct"}',
  1700000501.0);
