// Captures the microphone for the WebSocket transport: posts each 128-sample render quantum (mono) to the page.
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input[0]) this.port.postMessage(input[0].slice(0));
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
