// Alerts on the one record every finished run sends to Application Insights (shared/service/telemetry.py):
// a `traces` row with message "export_run" whose customDimensions are the run's dimensions (destination, run_id,
// status, triggered_by, dry_run, the counts, duration_ms; values arrive as strings). Deployed by main.bicep only
// when alertEmail is set. tests/test_infra_alerts.py checks every customDimensions field and status below against
// what the app really emits.
//  - run-not-succeeded: any run that ended failed, partial or refused, one alert per destination and status.
//  - destination-stale: a destination with no successful run for more than staleAfterHours (default 26 h: a daily
//    refresh plus two hours of slack). The query looks back 2 days (overrideQueryTimeRange), so a destination that
//    sent no record at all for 2 days drops out of it: the run-not-succeeded rule and the host's own failures
//    (Application Insights > Failures) cover an app that stopped altogether.
param location string
param tags object = {}
param applicationInsightsName string
@description('Who gets the alert mails (one address).')
param alertEmail string
@minValue(1)
@maxValue(47)
@description('Hours without a successful run after which a destination alerts (at most 47: the query looks back 2 days).')
param staleAfterHours int = 26
param actionGroupName string
param namePrefix string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'segexport'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var runNotSucceededQuery = '''
traces
| where message == "export_run"
| extend destination = tostring(customDimensions.destination), status = tostring(customDimensions.status), run_id = tostring(customDimensions.run_id)
| where status in ("failed", "partial", "refused")
| project timestamp, destination, status, run_id
'''

var destinationStaleQuery = '''
traces
| where message == "export_run"
| extend destination = tostring(customDimensions.destination), status = tostring(customDimensions.status)
| summarize last_success = maxif(timestamp, status == "succeeded"), last_run = max(timestamp) by destination
| where isnull(last_success) or last_success < ago(STALE_AFTER_HOURSh)
'''

resource runNotSucceeded 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-run-not-succeeded'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Segment export: a run ended failed, partial or refused'
    description: 'A run of a destination ended failed, partial or refused. Its report (GET /api/runs/{run_id}) says why and what to do.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: runNotSucceededQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'destination'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'status'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource destinationStale 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-destination-stale'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Segment export: a destination has had no successful run for ${staleAfterHours} h'
    description: 'No run of this destination succeeded for ${staleAfterHours} hours: check its latest reports, the segment files arriving and the scheduled refresh.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    // The query looks back 2 days (the longest a log search alert reads), not just the last hour.
    overrideQueryTimeRange: 'P2D'
    // Stateful: one alert per destination, resolved by itself once a run of it succeeds.
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: replace(destinationStaleQuery, 'STALE_AFTER_HOURS', string(staleAfterHours))
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'destination'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
output ruleNames array = [
  runNotSucceeded.name
  destinationStale.name
]
