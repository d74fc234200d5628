<?php
// kubefaas instance shim for PHP scripts.
//
// Loads the script's entry file, reports readiness, then serves calls from
// the controller until the connection closes. Frames, both directions:
// 4-byte big-endian header length, 4-byte big-endian body length, header
// JSON, body bytes. The body is the raw payload, so any bytes travel unchanged.

function kubefaas_connect() {
    $fd = getenv('KUBEFAAS_FD');
    if ($fd !== false) {
        return fopen("php://fd/$fd", 'r+b');
    }
    $server = stream_socket_server('tcp://' . getenv('KUBEFAAS_LISTEN'), $code, $message);
    if ($server === false) {
        fwrite(STDERR, "listening on " . getenv('KUBEFAAS_LISTEN') . " failed: $message\n");
        exit(1);
    }
    $connection = stream_socket_accept($server, -1);
    fclose($server);
    return $connection;
}

function kubefaas_read_exact($stream, $length) {
    $data = '';
    while (strlen($data) < $length) {
        $chunk = fread($stream, $length - strlen($data));
        if ($chunk === false || $chunk === '') {
            return null;
        }
        $data .= $chunk;
    }
    return $data;
}

function kubefaas_write_frame($stream, $header, $body = '') {
    $encoded = json_encode($header, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
    fwrite($stream, pack('NN', strlen($encoded), strlen($body)) . $encoded . $body);
    fflush($stream);
}

// Maps decode to PHP arrays; an empty one must go back as {} and not [].
function kubefaas_object($value) {
    return (is_array($value) && count($value) === 0) ? new stdClass() : $value;
}

function kubefaas_serve_call($header, $body) {
    $data = [
        'payload' => empty($header['has_payload']) ? null : $body,
        'variables' => $header['variables'] ?? [],
        'meta' => $header['meta'] ?? [],
        'flow' => $header['flow'] ?? [],
    ];
    if (array_key_exists('http', $header)) {
        $data['http'] = $header['http'];
    }
    try {
        $result = handle($data);
        if ($result === null) {
            $result = $data;
        }
        if (!is_array($result)) {
            throw new TypeError('handle must return an array, not ' . gettype($result));
        }
        $payload = $result['payload'] ?? null;
        if ($payload !== null && !is_string($payload)) {
            $payload = json_encode($payload);
        }
        $reply = ['id' => $header['id'], 'ok' => true, 'has_payload' => $payload !== null];
        foreach (['variables', 'meta', 'flow', 'response'] as $field) {
            if (array_key_exists($field, $result)) {
                $reply[$field] = kubefaas_object($result[$field]);
            }
        }
        if (array_key_exists('logs', $result)) {
            $reply['logs'] = array_map('strval', array_values((array) $result['logs']));
        }
        return [$reply, $payload ?? ''];
    } catch (Throwable $error) {
        fwrite(STDERR, (string) $error . "\n");
        $reply = ['id' => $header['id'], 'ok' => false, 'error' => ['type' => get_class($error), 'message' => $error->getMessage(), 'traceback' => (string) $error]];
        return [$reply, ''];
    }
}

$connection = kubefaas_connect();
$autoload = getenv('KUBEFAAS_DEPENDENCIES') . '/vendor/autoload.php';
if (is_file($autoload)) {
    require $autoload;
}
require getenv('KUBEFAAS_CODE_DIR') . '/' . getenv('KUBEFAAS_ENTRY');
if (!function_exists('handle')) {
    fwrite(STDERR, getenv('KUBEFAAS_ENTRY') . " defines no function handle(\$data)\n");
    exit(1);
}
kubefaas_write_frame($connection, ['ready' => true, 'pid' => getmypid()]);
while (true) {
    $prefix = kubefaas_read_exact($connection, 8);
    if ($prefix === null) {
        exit(0);
    }
    $lengths = unpack('Nheader/Nbody', $prefix);
    $header = json_decode(kubefaas_read_exact($connection, $lengths['header']), true);
    $body = $lengths['body'] > 0 ? kubefaas_read_exact($connection, $lengths['body']) : '';
    [$reply, $payload] = kubefaas_serve_call($header, $body);
    kubefaas_write_frame($connection, $reply, $payload);
}
