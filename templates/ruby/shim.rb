# kubefaas instance shim for Ruby scripts.
#
# Loads the script's entry file, reports readiness, then serves calls from
# the controller until the connection closes. Frames, both directions:
# 4-byte big-endian header length, 4-byte big-endian body length, header
# JSON, body bytes. The body is the raw payload, so any bytes travel unchanged.
require 'json'
require 'socket'

$stdout.sync = true
$stderr.sync = true

def kubefaas_connect
  return IO.for_fd(Integer(ENV['KUBEFAAS_FD']), 'r+b') if ENV['KUBEFAAS_FD']

  host, _, port = ENV['KUBEFAAS_LISTEN'].rpartition(':')
  server = TCPServer.new(host.empty? ? '0.0.0.0' : host, Integer(port))
  connection = server.accept
  server.close
  connection.binmode
  connection
end

def kubefaas_write_frame(io, header, body = ''.b)
  encoded = JSON.generate(header).b
  io.write([encoded.bytesize, body.bytesize].pack('NN') + encoded + body.b)
  io.flush
end

def kubefaas_decode_payload(header, body)
  return nil unless header['has_payload']

  text = body.dup.force_encoding(Encoding::UTF_8)
  text.valid_encoding? ? text : body
end

def kubefaas_serve_call(header, body)
  data = {
    'payload' => kubefaas_decode_payload(header, body),
    'variables' => header['variables'] || {},
    'meta' => header['meta'] || {},
    'flow' => header['flow'] || {}
  }
  data['http'] = header['http'] if header.key?('http')
  result = handle(data)
  result = data if result.nil?
  raise TypeError, "handle must return a Hash, not #{result.class}" unless result.is_a?(Hash)

  payload = result['payload']
  payload = JSON.generate(payload) unless payload.nil? || payload.is_a?(String)
  reply = { 'id' => header['id'], 'ok' => true, 'has_payload' => !payload.nil? }
  %w[variables meta flow response].each { |field| reply[field] = result[field] if result.key?(field) }
  reply['logs'] = Array(result['logs']).map(&:to_s) if result.key?('logs')
  [reply, (payload || '').b]
rescue StandardError, ScriptError => e
  warn "#{e.class}: #{e.message}\n#{Array(e.backtrace).join("\n")}"
  failure = { 'type' => e.class.name, 'message' => e.message, 'traceback' => Array(e.backtrace).join("\n") }
  [{ 'id' => header['id'], 'ok' => false, 'error' => failure }, ''.b]
end

connection = kubefaas_connect
gemfile = File.join(ENV['KUBEFAAS_DEPENDENCIES'].to_s, 'Gemfile')
if File.file?(gemfile)
  ENV['BUNDLE_GEMFILE'] = gemfile
  require 'bundler/setup'
end
load File.join(ENV['KUBEFAAS_CODE_DIR'], ENV['KUBEFAAS_ENTRY'])
unless respond_to?(:handle, true)
  warn "#{ENV['KUBEFAAS_ENTRY']} defines no method handle(data)"
  exit 1
end
kubefaas_write_frame(connection, { 'ready' => true, 'pid' => Process.pid })
loop do
  prefix = connection.read(8)
  exit 0 if prefix.nil? || prefix.bytesize < 8
  header_length, body_length = prefix.unpack('NN')
  header = JSON.parse(connection.read(header_length))
  body = body_length.positive? ? connection.read(body_length) : ''.b
  reply, payload = kubefaas_serve_call(header, body)
  kubefaas_write_frame(connection, reply, payload)
end
