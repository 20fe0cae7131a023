-- A small shop database: the example for dehydrated snapshots (README) and the source
-- of the format fixture formats/v1/example-db-repo. Load it into an empty database:
--   mariadb --default-character-set=utf8mb4 shop < examples/shop.sql
SET NAMES utf8mb4;
SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION';

CREATE TABLE customers (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  email VARCHAR(190) NOT NULL,
  name VARCHAR(100) NOT NULL,
  created DATETIME(3) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE products (
  sku VARCHAR(20) NOT NULL,
  title VARCHAR(200) NOT NULL,
  price DECIMAL(10,2) NOT NULL,
  weight_kg DOUBLE,
  photo BLOB,
  PRIMARY KEY (sku)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE orders (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  customer_id INT UNSIGNED NOT NULL,
  sku VARCHAR(20) NOT NULL,
  qty SMALLINT NOT NULL,
  status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new',
  note TEXT,
  PRIMARY KEY (id),
  KEY customer (customer_id),
  CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id),
  CONSTRAINT orders_product FOREIGN KEY (sku) REFERENCES products (sku)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO customers (email, name, created) VALUES
  ('ada@example.org', 'Ada Lovelace', '2026-01-02 03:04:05.678'),
  ('grace@example.org', 'Grace Hopper', '2026-02-03 04:05:06.000'),
  ('linus@example.org', 'Linus Törnqvist 🧊', '2026-03-04 05:06:07.890');
INSERT INTO products VALUES
  ('TEA-1', 'Green tea, 100 g', 4.50, 0.1, NULL),
  ('MUG-2', 'Mug "freezer"', 12.00, 0.35, 0x89504E470D0A1A0A0000),
  ('KEY-3', 'Keyboard; ISO layout\nwith a newline', 89.99, NULL, '');
INSERT INTO orders (customer_id, sku, qty, status, note) VALUES
  (1, 'TEA-1', 3, 'paid', NULL),
  (2, 'MUG-2', 1, 'shipped', 'gift wrap, please'),
  (3, 'KEY-3', 1, 'new', '');

CREATE VIEW order_totals AS
  SELECT o.id, c.email, o.qty * p.price AS total
  FROM orders o JOIN customers c ON c.id = o.customer_id JOIN products p ON p.sku = o.sku;

CREATE TRIGGER orders_default_note BEFORE INSERT ON orders FOR EACH ROW
  SET NEW.note = COALESCE(NEW.note, '');
