package org.fraudplatform.streaming;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

/**
 * Forwards records and watermarks, and never marks its output idle.
 *
 * <p>The feature job's windows form a diamond. The terminal windows read the
 * labels straight from the parsing operator and the transactions through the
 * customer and device windows. When the sources fall idle, the idle status
 * reaches the terminal windows on the short path first. Flink then follows
 * that path's watermark and leaves out a path that comes back from idleness
 * behind it. The terminal windows then drop the long path's rows as late,
 * without a trace, for as long as that path stays behind.
 *
 * <p>The parsing operator has already resolved idleness. Its watermark is the
 * lower of its active inputs', or the higher of the two once both are idle.
 * Behind it every path carries that one watermark, so no operator downstream
 * needs the idle status, and dropping it keeps every path in the minimum.
 */
public class NeverIdle<T> extends AbstractStreamOperator<T>
        implements OneInputStreamOperator<T, T> {
    private static final long serialVersionUID = 1L;

    @Override
    public void processElement(StreamRecord<T> element) {
        output.collect(element);
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus watermarkStatus) {
        // Dropped, because downstream windows must see every path's watermark.
    }
}
